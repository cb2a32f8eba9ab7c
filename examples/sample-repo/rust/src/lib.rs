mod point;

pub use point::Point;

pub fn perimeter(points: &[Point]) -> f64 {
    let mut total = 0.0;
    for i in 0..points.len() {
        total += points[i].distance(&points[(i + 1) % points.len()]);
    }
    total
}
