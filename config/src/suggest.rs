//! "Did you mean" for names a user mistyped: config keys, dependency names, attribute arguments.

/// The candidate closest to `name` by edit distance, if it is close enough to be a plausible typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Lists names as "`a`, `b`, `c`" for error messages.
pub fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

/// Edit distance over chars where swapping two neighbours counts as one edit (optimal string
/// alignment), since `nmae` for `name` is the typo people make. Inputs are short identifiers, so the
/// quadratic table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in table.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in table[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = table[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(table[i - 1][j] + 1).min(table[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[i - 2][j - 2] + 1);
            }
            table[i][j] = best;
        }
    }
    table[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["max_concurrent", "max_wait", "timeout"];
        assert_eq!(nearest("max_concurent", keys), Some("max_concurrent"));
        assert_eq!(nearest("timout", keys), Some("timeout"));
        assert_eq!(nearest("colour", keys), None);
        assert_eq!(nearest("nmae", ["name", "config", "crate"]), Some("name"), "a swap is one edit");
        assert_eq!(list(["a", "b"]), "`a`, `b`");
    }
}
