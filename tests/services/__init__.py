"""Real services for integration and e2e tests, each on 127.0.0.1 or a unix socket.

- :mod:`tests.services.postgres`: PostgreSQL from ``pgserver`` (:class:`PostgresServer`).
- :mod:`tests.services.s3`: SeaweedFS's S3 gateway (:class:`S3Server`).
- :mod:`tests.services.mlflow_server`: ``mlflow server`` on PostgreSQL and S3 (:class:`MlflowServer`).
- :mod:`tests.services.ray_cluster`: a multi-node ``ray start`` cluster (:class:`LocalCluster`).
- :mod:`tests.services.s3_fixtures`, :mod:`tests.services.fixtures`: pytest fixtures around them.
"""
