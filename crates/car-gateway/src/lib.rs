//! car-gateway
