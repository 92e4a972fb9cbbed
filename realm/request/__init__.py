"""A guest run as one value, from whichever front end it comes, to the sandbox.

A request's path, top-down: a front end (`realm run`'s flags, a `realm batch` line, an HTTP body of
realm.server, a bench) builds a RunRequest (`sources`: one constructor per front end), after its
fields passed the one check every front end shares (`fields`); `RunRequest.run` (`spec`) hands it to
the sandbox (realm.sandbox), whose guest calls the host functions (host_functions.abi), which drive
the engine (host_functions.engine) and its backend.
"""
