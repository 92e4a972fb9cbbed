"""The sandbox: guest modules measured (`module_bounds`), compiled in a limited worker and cached
(`compiler`), and run for one tenant's request in wasmtime (`run`)."""
