"""Models the service serves: registry.py resolves a name (base, ft:, checkpoint) to what it loads,
adapters.py checks a directory before it is loaded, sampler.py is the process's one sampler,
permissions.py shares a model with other projects, export.py downloads one as a tar."""
