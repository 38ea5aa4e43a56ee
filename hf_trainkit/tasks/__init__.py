"""Built-in tasks and tiny models built locally."""
