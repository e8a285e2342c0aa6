"""The object store, one module per concern.

- ``base``: the ``Store`` interface, ``ObjectInfo``, errors, prefix and TTL checks;
- ``s3``: ``S3Store``, any S3 server through the ``minio`` SDK, with bounded retries;
- ``local``: ``LocalStore``, a folder (the embedded mode);
- ``open``: ``open_store``, the one ``ANIM_STORE`` names.
"""
