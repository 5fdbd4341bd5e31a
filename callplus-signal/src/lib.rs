//! The callplus network layer.
