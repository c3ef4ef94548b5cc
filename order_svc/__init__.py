"""The order service: orders placed as a saga (reserve stock -> charge ->
confirm, with compensation), cancelled, listed, and recovered after a crash."""
