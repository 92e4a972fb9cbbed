"""The WebAssembly sandbox, one module per concern:

    engine         the process's wasmtime Engine, its settings and epoch ticker, a Store per request
    module_bounds  static bounds read from a module's binary before anything compiles it
    compiler       compiling in a limited worker, the compiled forms kept on disk
    intake         what a module must be to run (WAT or binary, its interface); the reference guest
    run            TenantSandbox: one request in its Store, the host functions bound to its Session
    report         RunResult, the typed error of a failed run, and what a trap or status means
    exports        one export by name (the only use of wasmtime-py's private API, with a fallback)
"""
