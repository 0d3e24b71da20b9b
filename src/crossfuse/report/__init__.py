"""Figures, the HTML report and the attention explorer."""
