"""One construct per concern: storage, layers, the function factory, the API, monitoring."""
