"""Domain operations on resources: validation and store calls, shared by the API routes and the CLI."""
