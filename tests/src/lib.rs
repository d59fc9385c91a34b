//! car-tests
