"""Live testbed: a crane's key devices as real protocol peers in Linux network namespaces.

Unlike the capture generator, the traffic here comes from real protocol stacks
(pymodbus, asyncua, python-snap7, cpppo), so it exercises quaywatch against
what the libraries actually send, and gives live capture something to watch.
"""
