"""The HTTP edge shared by the API functions: caller identity from the authorizer context, the one
error -> status mapping, and the Powertools resolver factory."""
