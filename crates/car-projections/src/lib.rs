//! car-projections
