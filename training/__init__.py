"""training part of imgzoo (see DESIGN.md)."""
