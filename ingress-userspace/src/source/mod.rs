//! Where the configuration comes from: a directory of YAML files (the
//! default; the daemon watches it) or the Kubernetes API ([`kubernetes`]).
//! Both feed the same pipeline; they differ in how errors apply: a directory
//! is one change a person makes (any error keeps the last good config), the
//! API is many owners' objects (an invalid object is left out, the rest
//! applies).

pub mod kubernetes;
