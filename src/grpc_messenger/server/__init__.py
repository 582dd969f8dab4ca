"""The replica server: handlers, start-up, health, drain."""
