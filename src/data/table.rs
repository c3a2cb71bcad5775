//! Parquet in and out, with the schema checks that turn "column not found" into a message
//! naming the file. The only module of `data` that knows polars.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::{
    Column, DataFrame, DataType, IntoColumn, IntoSeries, ListBuilderTrait, ListPrimitiveChunkedBuilder,
    ParquetReader, ParquetWriter, SerReader, UInt32Type,
};

/// Writes `frame` to `path` (zstd, polars' default; pyarrow reads it), atomically.
pub fn write_parquet(frame: &mut DataFrame, path: &Path) -> Result<()> {
    pipe_engine::fsutil::write_atomic_with(path, |file| {
        ParquetWriter::new(BufWriter::new(file)).finish(frame)?;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file).finish().with_context(|| format!("reading {}", path.display()))
}

/// Checks that `frame` (read from `path`) has these columns with these types.
pub fn require_columns(frame: &DataFrame, path: &Path, columns: &[(&str, DataType)]) -> Result<()> {
    for (name, expected) in columns {
        let column = frame.column(name).with_context(|| format!("{}: no column `{name}`", path.display()))?;
        if column.dtype() != expected {
            bail!("{}: column `{name}` is {}, expected {expected}", path.display(), column.dtype());
        }
        if column.null_count() > 0 {
            bail!("{}: column `{name}` has {} nulls", path.display(), column.null_count());
        }
    }
    Ok(())
}

/// The values of a string column without nulls (checked by [`require_columns`]).
pub fn str_values<'a>(frame: &'a DataFrame, name: &str) -> Result<Vec<&'a str>> {
    let column = frame.column(name)?.str()?;
    Ok(column.iter().map(Option::unwrap_or_default).collect())
}

/// The values of a `UInt32` column without nulls.
pub fn u32_values(frame: &DataFrame, name: &str) -> Result<Vec<u32>> {
    Ok(frame.column(name)?.u32()?.iter().map(Option::unwrap_or_default).collect())
}

/// A `List<UInt32>` column built from concatenated values and per-row lengths, without a
/// Series per row.
pub fn u32_list_column(name: &str, values: &[u32], lengths: &[usize]) -> Column {
    let mut builder = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
        name.into(),
        lengths.len(),
        values.len(),
        DataType::UInt32,
    );
    let mut start = 0;
    for &len in lengths {
        builder.append_slice(&values[start..start + len]);
        start += len;
    }
    builder.finish().into_series().into_column()
}

/// The rows of a `List<UInt32>` column, as vectors (for tests and small tables).
pub fn u32_list_values(frame: &DataFrame, name: &str) -> Result<Vec<Vec<u32>>> {
    let column = frame.column(name)?.list()?;
    column
        .series_iter()
        .map(|row| {
            let row = row.context("null list")?;
            Ok(row.u32()?.iter().map(Option::unwrap_or_default).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_strings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let tokens = u32_list_column("tokens", &[1, 2, 3, 4, 5], &[2, 0, 3]);
        let mut frame =
            DataFrame::new_infer_height(vec![Column::new("name".into(), ["a", "b", "c"]), tokens]).unwrap();
        write_parquet(&mut frame, &path).unwrap();
        let back = read_parquet(&path).unwrap();
        require_columns(
            &back,
            &path,
            &[("name", DataType::String), ("tokens", DataType::List(Box::new(DataType::UInt32)))],
        )
        .unwrap();
        assert_eq!(str_values(&back, "name").unwrap(), ["a", "b", "c"]);
        assert_eq!(u32_list_values(&back, "tokens").unwrap(), vec![vec![1, 2], vec![], vec![3, 4, 5]]);
        let err = require_columns(&back, &path, &[("name", DataType::UInt32)]).unwrap_err().to_string();
        assert!(err.contains("t.parquet") && err.contains("`name`"), "{err}");
        assert!(require_columns(&back, &path, &[("missing", DataType::String)]).is_err());
    }
}
