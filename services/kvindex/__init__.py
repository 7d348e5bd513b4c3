"""kvindex: keeps the global KV block index in Redis from the engines' KV events."""
