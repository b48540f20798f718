"""Talks to a moto server for the end-to-end tests, through boto3 (protocol truth).

    moto_peer.py setup    --endpoint URL --region R --bucket B --stream S
    moto_peer.py setup-es --endpoint URL --region R --bucket B --stream S
    moto_peer.py records  --endpoint URL --region R --bucket B
    moto_peer.py setup-kinesis   --endpoint URL --region R --stream S --shards N
    moto_peer.py kinesis-records --endpoint URL --region R --stream S

Objects of gzip members (a sink's `compression = "gzip"`) are decompressed by Python's gzip, which
reads several members as their concatenation, as zcat does; "gzip_objects" counts them.

`setup` creates the bucket and a Direct PUT delivery stream that writes to it; `setup-es` a stream
that delivers to an Elasticsearch domain (one document per record), backed up to the bucket. `records` prints
one JSON document: {"objects": N, "records": [...]}, where records are the newline-separated
lines of every object in the bucket, in key order.

`setup-kinesis` creates a Kinesis data stream of N shards. `kinesis-records` reads every shard
from its start with GetShardIterator/GetRecords, deaggregates KPL aggregated records with AWS's
own library (PyPI `aws-kinesis-agg`: a third party's reading of the format, not tailhose's), and
prints {"kinesis_records": N, "shards": N, "records": [{"line", "partition_key", "shard",
"aggregated"}]}, one entry per line of every user record.
"""

import argparse
import base64
import gzip
import json
import sys

import boto3
from aws_kinesis_agg.deaggregator import iter_deaggregate_records


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
    compressed = 0
    for key in keys:
        body = s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()
        # An object of gzip members (`compression = "gzip"`), read as zcat reads it.
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
            compressed += 1
        lines.extend(line.decode("utf-8", "replace") for line in body.split(b"\n") if line)
    json.dump({"objects": len(keys), "gzip_objects": compressed, "keys": keys[:3], "records": lines}, sys.stdout)


def setup_kinesis(args):
    kinesis = client("kinesis", args)
    kinesis.create_stream(StreamName=args.stream, ShardCount=args.shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=args.stream, WaiterConfig={"Delay": 1})


def kinesis_records(args):
    kinesis = client("kinesis", args)
    shards = kinesis.list_shards(StreamName=args.stream)["Shards"]
    put = 0
    lines = []
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=args.stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            answer = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            if not answer["Records"]:
                break
            put += len(answer["Records"])
            for user_record in iter_deaggregate_records(answer["Records"], data_format="Boto3"):
                record = user_record["kinesis"]
                aggregated = bool(record.get("aggregated"))
                data = base64.b64decode(record["data"]) if aggregated else record["data"]
                for line in data.split(b"\n"):
                    if line:
                        lines.append(
                            {
                                "line": line.decode("utf-8", "replace"),
                                "partition_key": record["partitionKey"],
                                "shard": shard["ShardId"],
                                "aggregated": aggregated,
                            }
                        )
            iterator = answer.get("NextShardIterator")
    json.dump({"kinesis_records": put, "shards": len(shards), "records": lines}, sys.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "setup-es", "records", "setup-kinesis", "kinesis-records"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket")
    parser.add_argument("--stream")
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    commands = {
        "setup": setup,
        "setup-es": setup_es,
        "records": records,
        "setup-kinesis": setup_kinesis,
        "kinesis-records": kinesis_records,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
