"""Ready-made hooks for training frameworks. Each submodule imports its framework; this package
imports nothing, so `import service.integrations` stays cheap."""
