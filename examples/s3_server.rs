//! A small S3-protocol server for tests: serves a directory (one sub-directory per
//! bucket, one plain file per object, so tests can alter objects in place) on
//! 127.0.0.1 with a fixed test key pair.
//!
//! Usage: `s3_server ROOT [PORT] [ACCESS_KEY SECRET_KEY]`. PORT 0 (the default) picks a
//! free port. Prints `READY http://127.0.0.1:PORT` on stdout once it accepts connections.

use std::io::Write;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Request, S3Response, S3Result, S3};
use tokio::net::TcpListener;

/// The key pair tests use unless they pass their own.
const TEST_ACCESS_KEY: &str = "bae-test-access-key";
const TEST_SECRET_KEY: &str = "bae-test-secret-key";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(args.first().ok_or("usage: s3_server ROOT [PORT] [AK SK]")?);
    let port: u16 = match args.get(1) {
        Some(p) => p.parse()?,
        None => 0,
    };
    let access_key = args
        .get(2)
        .map_or(TEST_ACCESS_KEY, String::as_str)
        .to_string();
    let secret_key = args
        .get(3)
        .map_or(TEST_SECRET_KEY, String::as_str)
        .to_string();

    std::fs::create_dir_all(&root)?;
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| format!("cannot serve {}: {e:?}", root.display()))?;
    let fs = BlockReads {
        inner: fs,
        root: root.canonicalize()?,
    };
    let service = {
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    };

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let http = ConnBuilder::new(TokioExecutor::new());
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY http://{addr}")?;
        out.flush()?;
    }
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("s3_server: accept failed: {e}");
                continue;
            }
        };
        // As real object stores do: without it the tail segment of a response waits for
        // the client's delayed ACK (40 ms on Linux) behind Nagle's algorithm.
        if let Err(e) = socket.set_nodelay(true) {
            eprintln!("s3_server: TCP_NODELAY: {e}");
        }
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// s3s-fs with object bodies read in blocks of [`BODY_BLOCK`] on a blocking thread each.
/// s3s-fs streams a body in 4 KiB reads through `tokio::fs`, one hand-off to a blocking
/// thread and back per 4 KiB: 5 ms for a 256 KiB range of a file in the page cache,
/// which made this server, not its clients, the cost every benchmark contender
/// measured. Everything but the body is still s3s-fs's (it checks the request, opens
/// the object, reads its metadata and range).
struct BlockReads {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
}

/// Bytes read per step of a GET body.
const BODY_BLOCK: usize = 256 * 1024;

/// The S3 impl: the operations s3s-fs implements forwarded to it, and `$own` (the
/// whole impl is generated, so that `async_trait` sees every method).
macro_rules! s3_impl {
    ($($op:ident: $input:ty => $output:ty;)* { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl S3 for BlockReads {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.inner.$op(req).await
                }
            )*
            $($own)*
        }
    };
}

s3_impl! {
    create_bucket: CreateBucketInput => CreateBucketOutput;
    copy_object: CopyObjectInput => CopyObjectOutput;
    delete_bucket: DeleteBucketInput => DeleteBucketOutput;
    delete_object: DeleteObjectInput => DeleteObjectOutput;
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
    head_bucket: HeadBucketInput => HeadBucketOutput;
    head_object: HeadObjectInput => HeadObjectOutput;
    list_buckets: ListBucketsInput => ListBucketsOutput;
    list_objects: ListObjectsInput => ListObjectsOutput;
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
    put_object: PutObjectInput => PutObjectOutput;
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
    upload_part: UploadPartInput => UploadPartOutput;
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
    list_parts: ListPartsInput => ListPartsOutput;
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    {
        async fn get_object(
            &self,
            req: S3Request<GetObjectInput>,
        ) -> S3Result<S3Response<GetObjectOutput>> {
            let key = req.input.key.trim_start_matches('/');
            let path = self.root.join(&req.input.bucket).join(key);
            let mut resp = self.inner.get_object(req).await?;
            let out = &mut resp.output;
            let len = out.content_length.unwrap_or(0).max(0) as u64;
            // "bytes FIRST-LAST/SIZE" when a range was asked for.
            let first = out
                .content_range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            let file = std::fs::File::open(&path).map_err(|e| s3s::s3_error!(e, NoSuchKey))?;
            out.body = Some(StreamingBlob::wrap(blocks(file, first, len)));
            Ok(resp)
        }
    }
}

/// `len` bytes of `file` from `at`, read on a blocking thread a block at a time (two
/// blocks ahead of the client at most).
fn blocks(
    file: std::fs::File,
    at: u64,
    len: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Sync {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BODY_BLOCK as u64) as usize;
            let mut buf = vec![0u8; n];
            let r = file
                .read_exact_at(&mut buf, at + done)
                .map(|()| bytes::Bytes::from(buf));
            let failed = r.is_err();
            if tx.blocking_send(r).is_err() || failed {
                return;
            }
            done += n as u64;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}
