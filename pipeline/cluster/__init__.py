"""Cluster mode on Ray (`run --cluster ADDRESS`, docs/cluster.md): a controller places cameras on worker nodes.

Nothing here is imported without `--cluster`: Ray is an optional extra (`pip install .[cluster]`).
"""
