"""The client library: async core, sync facade, local inbox."""
