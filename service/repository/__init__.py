"""The model repository: config.yaml parsing and validation, versions, load and warm-up.

    config   config.yaml's schema (ModelConfig and its parts), read_config, ConfigError
    checks   a version's graph and a model's feature bindings against config.yaml
    loader   Repository: finding, opening, checking and warming up every version

The layout is Triton's:

    <root>/<model>/config.yaml
    <root>/<model>/<version>/model.onnx      (a version is a directory named by digits)

except that a version Triton serves needs no directory: config.yaml names it (`backend: triton`
with `triton.model_versions`, or `version_backends`), so one model can have versions on each.

Every problem is a ConfigError whose message names the file and the field, one problem a line,
so `mlgate models check` and a failed start both say exactly what to fix.
"""
