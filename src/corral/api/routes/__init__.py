"""One route module per resource; handlers parse, call a service or the store, and return a schema model."""
