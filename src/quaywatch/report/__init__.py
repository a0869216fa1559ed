"""The offline HTML incident report: facts from the store (collect.py), rendered autoescaped (render.py)."""
