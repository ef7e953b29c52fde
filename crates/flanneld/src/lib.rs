//! The flannel node agent as a library, so integration tests can drive its parts.
