//! Placeholder: the signal layer lands here.
