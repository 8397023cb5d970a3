//! Which products a rule applies to. Rules with no scope apply mesh-wide;
//! per-product bundle slices keep only the rules whose scope matches.

/// True when a rule scoped to `domains` and `products` applies to the product
/// `product_id` (`domain/name`) in `domain`. Empty lists mean "everywhere".
pub fn applies(domains: &[String], products: &[String], domain: &str, product_id: &str) -> bool {
    (domains.is_empty() || domains.iter().any(|d| d == domain))
        && (products.is_empty() || products.iter().any(|p| p == product_id))
}

/// True when `ports` (empty = all) names `port`.
pub fn port_matches(ports: &[String], port: &str) -> bool {
    ports.is_empty() || ports.iter().any(|p| p == port)
}
