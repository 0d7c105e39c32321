"""export part of imgzoo (see DESIGN.md)."""
