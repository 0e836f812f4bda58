"""The engine: requests, the core step loop and the offline front end."""
