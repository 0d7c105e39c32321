"""service part of imgzoo (see DESIGN.md)."""
