"""The engine: recipe schema, Stage protocol, registry, pipeline, run layout, records, stats, sinks."""
