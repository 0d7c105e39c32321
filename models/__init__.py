"""models part of imgzoo (see DESIGN.md)."""
