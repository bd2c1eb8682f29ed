"""The morning view of a run: a live, read-only page in the browser (`autoresearch dashboard`)."""
