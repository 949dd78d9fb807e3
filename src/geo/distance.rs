//! Great-circle distance between two points on the Earth.

/// Mean Earth radius (IUGG), in kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Distance in kilometres along the surface between two (latitude, longitude) points in
/// degrees, by the haversine formula (stable for small and antipodal distances alike).
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
    const ASHBURN: (f64, f64) = (39.0438, -77.4874);
    const SINGAPORE: (f64, f64) = (1.3521, 103.8198);

    #[test]
    fn zero_for_the_same_point() {
        assert_eq!(great_circle_km(FRANKFURT, FRANKFURT), 0.0);
    }

    #[test]
    fn known_city_pairs_within_one_percent() {
        // Reference distances from published great-circle calculators.
        let cases = [
            (FRANKFURT, ASHBURN, 6_530.0),
            (FRANKFURT, SINGAPORE, 10_260.0),
            (ASHBURN, SINGAPORE, 15_560.0),
        ];
        for (a, b, expected) in cases {
            let d = great_circle_km(a, b);
            assert!((d - expected).abs() / expected < 0.01, "{a:?}->{b:?}: {d}");
        }
    }

    #[test]
    fn symmetric_and_bounded_by_half_circumference() {
        let d1 = great_circle_km(ASHBURN, SINGAPORE);
        let d2 = great_circle_km(SINGAPORE, ASHBURN);
        assert!((d1 - d2).abs() < 1e-9);
        let antipode = great_circle_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipode - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn crossing_the_antimeridian_takes_the_short_way() {
        let d = great_circle_km((0.0, 179.5), (0.0, -179.5));
        assert!(d < 120.0, "{d}");
    }
}
