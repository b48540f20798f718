"""Talks to a moto server for the end-to-end tests, through boto3 (protocol truth).

    moto_peer.py setup    --endpoint URL --region R --bucket B --stream S
    moto_peer.py setup-es --endpoint URL --region R --bucket B --stream S
    moto_peer.py records  --endpoint URL --region R --bucket B

`setup` creates the bucket and a Direct PUT delivery stream that writes to it; `setup-es` a stream
that delivers to an Elasticsearch domain (one document per record), backed up to the bucket. `records` prints
one JSON document: {"objects": N, "records": [...]}, where records are the newline-separated
lines of every object in the bucket, in key order.
"""

import argparse
import json
import sys

import boto3


def client(kind, args):
    return boto3.client(
        kind,
        endpoint_url=args.endpoint,
        region_name=args.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def s3_destination(args):
    """The bucket as a delivery destination, given in full so that DescribeDeliveryStream answers
    with every field the AWS SDKs require (moto echoes only what it was given)."""
    return {
        "RoleARN": "arn:aws:iam::123456789012:role/firehose-test",
        "BucketARN": f"arn:aws:s3:::{args.bucket}",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
        "CompressionFormat": "UNCOMPRESSED",
        "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
    }


def setup(args):
    s3 = client("s3", args)
    if args.region == "us-east-1":
        s3.create_bucket(Bucket=args.bucket)
    else:
        s3.create_bucket(Bucket=args.bucket, CreateBucketConfiguration={"LocationConstraint": args.region})
    client("firehose", args).create_delivery_stream(
        DeliveryStreamName=args.stream,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration=s3_destination(args),
    )


def setup_es(args):
    client("firehose", args).create_delivery_stream(
        DeliveryStreamName=args.stream,
        DeliveryStreamType="DirectPut",
        ElasticsearchDestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-test",
            "DomainARN": "arn:aws:es:ap-northeast-2:123456789012:domain/conect",
            "IndexName": "conect",
            "IndexRotationPeriod": "OneHour",
            "S3BackupMode": "FailedDocumentsOnly",
            "S3Configuration": s3_destination(args),
        },
    )


def records(args):
    s3 = client("s3", args)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    keys.sort()
    lines = []
    for key in keys:
        body = s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()
        lines.extend(line.decode("utf-8", "replace") for line in body.split(b"\n") if line)
    json.dump({"objects": len(keys), "keys": keys[:3], "records": lines}, sys.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "setup-es", "records"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--stream")
    args = parser.parse_args()
    {"setup": setup, "setup-es": setup_es, "records": records}[args.command](args)


if __name__ == "__main__":
    main()
