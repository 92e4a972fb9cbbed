"""`realm serve --replicas N`: N replicas of Realm's server on Ray Serve, each tenant kept on one
replica (docs/cluster.md). Only realm/cli/serve.py imports this package, and only with --replicas:
without it nothing here (nor Ray) is loaded."""
