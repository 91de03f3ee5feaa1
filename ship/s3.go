package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/superfly/ltx"
)

// S3Config says where an S3 replica lives. Empty Endpoint and Region leave
// them to the SDK's standard configuration (AWS_ENDPOINT_URL_S3,
// AWS_ENDPOINT_URL, AWS_REGION, ~/.aws/config).
type S3Config struct {
	Bucket   string
	Prefix   string // key prefix, without leading or trailing '/'; may be empty
	Endpoint string // e.g. http://127.0.0.1:7070
	Region   string
}

// s3DefaultRegion signs requests when nothing configures a region; S3
// compatible servers accept it.
const s3DefaultRegion = "us-east-1"

// s3MaxAttempts is how often the SDK's standard retryer tries one call
// (unless AWS_MAX_ATTEMPTS or the profile says otherwise): the uploader
// retries failed shipments itself, with its own backoff, so one call need
// not outlast an outage.
const s3MaxAttempts = 5

// S3Replica keeps LTX files in an S3 bucket under
//
//	<prefix>/<db>/<level %04x>/<min %016x>-<max %016x>.ltx
//
// with the commit time in the object metadata. It holds no state besides the
// SDK client and is safe for concurrent use.
type S3Replica struct {
	client *s3.Client
	bucket string
	prefix string
	url    string
}

var _ ReplicaClient = (*S3Replica)(nil)

// NewS3Replica loads the AWS SDK's standard configuration (credential chain,
// region, endpoint, retry settings) and applies c on top. A custom endpoint,
// from c or the environment, implies path-style addressing. Nothing is
// contacted yet.
func NewS3Replica(ctx context.Context, c S3Config) (*S3Replica, error) {
	if c.Bucket == "" {
		return nil, errors.New("s3 replica: no bucket")
	}
	var opts []func(*config.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 replica: loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = s3DefaultRegion
	}
	if cfg.RequestChecksumCalculation == aws.RequestChecksumCalculationUnset {
		// Unless configured otherwise, a PUT carries no extra checksum: by
		// default the SDK streams the body aws-chunked with a CRC trailer,
		// which costs both sides CPU on every small object (and not every
		// S3 compatible server takes it). An LTX file has its own checksum,
		// which every reader verifies.
		cfg.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	}
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		// Readers keep up to 64 requests in flight (a historical mount
		// reading page indexes); the SDK keeps 10 idle connections per
		// host, so most of them were dialled anew for every request.
		cfg.HTTPClient = bc.WithTransportOptions(func(tr *http.Transport) { tr.MaxIdleConnsPerHost = 128 })
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		// BaseEndpoint is set here by the query, AWS_ENDPOINT_URL(_S3) or
		// the profile: whatever the source, it is not AWS itself, and S3
		// compatible servers rarely resolve bucket.host names.
		if o.BaseEndpoint != nil {
			o.UsePathStyle = true
		}
		// The SDK logs to stderr by default (objects stored without a
		// checksum, e.g. by other tools, log a line per GET); a library
		// does not print, and every failure comes back as an error.
		o.Logger = logging.Nop{}
		o.DisableLogOutputChecksumValidationSkipped = true
		if o.RetryMaxAttempts == 0 {
			o.RetryMaxAttempts = s3MaxAttempts
		}
		// A conditional put that races another write to the same key gets
		// 409 ConditionalRequestConflict; S3 asks to retry it, and the retry
		// then succeeds or sees the winner (412).
		o.Retryer = retry.AddWithErrorCodes(o.Retryer, "ConditionalRequestConflict")
	})
	u := ReplicaURL{Scheme: "s3", Bucket: c.Bucket, Prefix: strings.Trim(c.Prefix, "/"), Endpoint: c.Endpoint, Region: c.Region}
	return &S3Replica{client: client, bucket: c.Bucket, prefix: u.Prefix, url: u.String()}, nil
}

// String is the replica's URL (credentials are never part of it).
func (r *S3Replica) String() string { return r.url }

// levelPrefix is the key prefix of one level of one database, ending in '/'.
func (r *S3Replica) levelPrefix(db string, level int) string {
	return path.Join(r.prefix, db, fmt.Sprintf("%04x", level)) + "/"
}

func (r *S3Replica) key(db string, level int, minTXID, maxTXID ltx.TXID) string {
	return r.levelPrefix(db, level) + ltx.FormatFilename(minTXID, maxTXID)
}

// Databases lists the names directly under the prefix. Unlike a directory,
// S3 has no empty prefixes, so every name listed holds at least one object.
func (r *S3Replica) Databases(ctx context.Context) ([]string, error) {
	base := ""
	if r.prefix != "" {
		base = r.prefix + "/"
	}
	var names []string
	p := s3.NewListObjectsV2Paginator(r.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(r.bucket), Prefix: aws.String(base), Delimiter: aws.String("/"),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, r.wrap("list", base, err)
		}
		for _, cp := range page.CommonPrefixes {
			name := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), base), "/")
			if name != "" {
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// LTXFiles lists a level's LTX files, following pagination. CreatedAt is the
// object's LastModified, the time of the upload; the commit time is in the
// LTX header and the object metadata. A missing database or level is an
// empty list.
func (r *S3Replica) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	return r.listLevel(ctx, db, level, 0)
}

func cmpTXID(a, b ltx.TXID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// OpenLTX streams one LTX file. A missing file is ErrNotFound. The SDK
// retries the request, not a read of the body that fails half way.
func (r *S3Replica) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	return r.get(ctx, r.key(db, level, minTXID, maxTXID), "")
}

// ReadLTXRange streams n bytes of one LTX file from byte off (n < 0: to the
// end) with a ranged GET. A range that starts at or past the end of the
// object is empty.
func (r *S3Replica) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	if n == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	rng := fmt.Sprintf("bytes=%d-", off)
	if n > 0 {
		rng += strconv.FormatInt(off+n-1, 10)
	}
	rc, err := r.get(ctx, r.key(db, level, minTXID, maxTXID), rng)
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "InvalidRange" {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	return rc, err
}

// get fetches one object, or the byte range rng of it ("" for all).
func (r *S3Replica) get(ctx context.Context, key, rng string) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(key)}
	if rng != "" {
		in.Range = aws.String(rng)
	}
	out, err := r.client.GetObject(ctx, in)
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return nil, fmt.Errorf("s3://%s/%s: %w", r.bucket, key, ErrNotFound)
		}
		return nil, r.wrap("get", key, err)
	}
	return out.Body, nil
}

// PutLTX uploads one LTX file with If-None-Match: *, so an existing object is
// never replaced: the server's 412 (or a 409 that outlasts the retries)
// becomes ErrExists. The metadata holds the commit time and the TXID range.
func (r *S3Replica) PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) error {
	key := r.key(db, level, minTXID, maxTXID)
	meta := map[string]string{
		"sqlfs-min-txid": minTXID.String(),
		"sqlfs-max-txid": maxTXID.String(),
	}
	if !createdAt.IsZero() {
		meta["sqlfs-created"] = createdAt.UTC().Format(time.RFC3339Nano)
	}
	_, err := r.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(r.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data), // seekable: the SDK rewinds it to retry
		ContentLength: aws.Int64(int64(len(data))),
		ContentType:   aws.String("application/octet-stream"),
		IfNoneMatch:   aws.String("*"),
		Metadata:      meta,
	})
	if isPreconditionFailed(err) {
		return fmt.Errorf("s3://%s/%s: %w", r.bucket, key, ErrExists)
	} else if err != nil {
		return r.wrap("put", key, err)
	}
	return nil
}

// MaxDeleteBatch is how many objects one S3 DeleteObjects request removes.
const MaxDeleteBatch = 1000

// DeleteLTX removes objects with one DeleteObjects request per
// MaxDeleteBatch of them (quiet: S3 answers only with the keys it could not
// delete; it does not report missing ones). The first key S3 refused is
// the error.
func (r *S3Replica) DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error {
	for batch := range slices.Chunk(files, MaxDeleteBatch) {
		ids := make([]types.ObjectIdentifier, len(batch))
		for i, fi := range batch {
			ids[i] = types.ObjectIdentifier{Key: aws.String(r.key(db, fi.Level, fi.MinTXID, fi.MaxTXID))}
		}
		out, err := r.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(r.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return r.wrap("delete", aws.ToString(ids[0].Key), err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			return fmt.Errorf("s3://%s/%s: delete: %s: %s (and %d more of %d keys)", r.bucket, aws.ToString(e.Key),
				aws.ToString(e.Code), aws.ToString(e.Message), len(out.Errors)-1, len(batch))
		}
	}
	return nil
}

func isPreconditionFailed(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "PreconditionFailed", "ConditionalRequestConflict":
			return true
		}
	}
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusPreconditionFailed
}

// wrap names the object and, for the errors a user can fix, says what is
// wrong in words: the SDK's own message names neither the bucket nor the
// cause plainly.
func (r *S3Replica) wrap(op, key string, err error) error {
	loc := fmt.Sprintf("s3 %s s3://%s/%s", op, r.bucket, key)
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("%s: %w", loc, err)
	}
	switch ae.ErrorCode() {
	case "NoSuchBucket":
		return fmt.Errorf("%s: bucket %q does not exist: %w", loc, r.bucket, err)
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
		"XAdminUserNotFound": // versitygw's answer (404) to an unknown access key
		return fmt.Errorf("%s: the server rejected the credentials: %w", loc, err)
	case "AccessDenied":
		return fmt.Errorf("%s: access denied to bucket %q (check the credentials and the bucket's policy): %w", loc, r.bucket, err)
	}
	return fmt.Errorf("%s: %w", loc, err)
}

var _ LeaseClient = (*S3Replica)(nil)

// leaseKey is the key of the lease object at the replica root.
func (r *S3Replica) leaseKey() string { return path.Join(r.prefix, LeaseName) }

// ReadLease gets the lease object and its ETag.
func (r *S3Replica) ReadLease(ctx context.Context) ([]byte, string, error) {
	key := r.leaseKey()
	out, err := r.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(key)})
	if err != nil {
		var nsk *types.NoSuchKey
		if errors.As(err, &nsk) {
			return nil, "", fmt.Errorf("s3://%s/%s: %w", r.bucket, key, ErrNotFound)
		}
		return nil, "", r.wrap("get", key, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, "", r.wrap("get", key, err)
	}
	return data, aws.ToString(out.ETag), nil
}

// WriteLease puts the lease object with If-None-Match: * (ifMatch "") or
// If-Match: ifMatch; a failed precondition is ErrExists.
func (r *S3Replica) WriteLease(ctx context.Context, data []byte, ifMatch string) (string, error) {
	key := r.leaseKey()
	in := &s3.PutObjectInput{
		Bucket: aws.String(r.bucket), Key: aws.String(key),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		ContentType: aws.String("application/json"),
	}
	if ifMatch == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(ifMatch)
	}
	out, err := r.client.PutObject(ctx, in)
	var nsk *types.NoSuchKey
	if isPreconditionFailed(err) || (ifMatch != "" && errors.As(err, &nsk)) {
		return "", fmt.Errorf("s3://%s/%s: %w", r.bucket, key, ErrExists)
	} else if err != nil {
		return "", r.wrap("put", key, err)
	}
	return aws.ToString(out.ETag), nil
}

// DeleteLease deletes the lease object with If-Match: ifMatch.
func (r *S3Replica) DeleteLease(ctx context.Context, ifMatch string) error {
	key := r.leaseKey()
	_, err := r.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(r.bucket), Key: aws.String(key), IfMatch: aws.String(ifMatch),
	})
	var nsk *types.NoSuchKey
	if isPreconditionFailed(err) || errors.As(err, &nsk) {
		return fmt.Errorf("s3://%s/%s: %w", r.bucket, key, ErrExists)
	} else if err != nil {
		return r.wrap("delete", key, err)
	}
	return nil
}
