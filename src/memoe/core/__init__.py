"""Machinery shared by every model family: formulas, designs, linear algebra, optimisation, R-style
formatting, the result base and persistence. Nothing here imports a model family."""
