"""MLX frontend (coming with issue 3)."""
