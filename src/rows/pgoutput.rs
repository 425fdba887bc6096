//! pgoutput decoder (placeholder, filled in the next step).
