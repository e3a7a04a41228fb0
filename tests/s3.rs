//! S3 end-to-end tests (placeholder until the S3 harness lands).
