"""Object stores that models come from (issue 18): the object-store secrets kept outside git,
and the S3 client over them. A layer of its own between the core and the engine backends: the
core reads object versions and downloads models through it; no manifest ever holds what it
keeps."""
