"""The spec part: from YAML text to a checked, expanded tree of LayerNodes. It owns reading
YAML with locations (yamlio), expressions (expressions), schema error messages
(schema_errors), the node tree (nodes), load_spec / parse_spec (reader), plugin loading
(plugins) and the schema file editors use (schema_file writes schema.json).

It may import the base modules (errors, atomic, regular_files, version) and the layers
part (the registry it validates against); never torch at import time.
"""
