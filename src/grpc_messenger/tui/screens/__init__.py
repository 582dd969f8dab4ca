"""The app's screens: sign-in, inbox (conversations, messages, compose, replicas), help."""
