"""A deployed function behind a function URL: what it answers depends on the path it was called at."""

import base64
import time

PNG_ISH = bytes(range(256))  # every byte value: a binary answer must arrive unchanged


def handler(event, context):
    http = event["requestContext"]["http"]
    print(f"{http['method']} {event['rawPath']} from {http['sourceIp']}")
    path = event["rawPath"]
    if path.startswith("/echo"):
        return event  # no statusCode: a 200 JSON answer of the event itself
    if path == "/custom":
        return {"statusCode": 201,
                "headers": {"Content-Type": "text/plain", "X-Custom": "yes",
                            "Access-Control-Allow-Origin": "https://elsewhere.example"},
                "cookies": ["session=abc; Path=/; HttpOnly", "theme=dark; Max-Age=60"],
                "body": "created"}
    if path == "/binary":
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(PNG_ISH).decode(), "isBase64Encoded": True}
    if path == "/string":
        return "Hello, world!"
    if path == "/none":
        return None
    if path == "/fail":
        raise ValueError("asked to fail")
    if path == "/bad":
        return {"statusCode": "teapot"}
    if path == "/slow":
        time.sleep(float(event["queryStringParameters"]["seconds"]))
        return {"slept": True}
    return {"hello": "world"}
