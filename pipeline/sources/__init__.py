"""Sources: PyAV decoding of files, RTSP/HTTP/HLS streams and webcams into `Frame`s; camera URLs and their redaction."""
