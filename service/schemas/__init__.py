"""Request and response bodies, one module per resource; they are the OpenAPI schema."""
